"""The one path from an image or slide to files: read -> check -> predict -> split -> measure -> write.

Every entry point calls :class:`NucleusSegmenter`, built from ``configs/inference.json`` (``segmenter``): the
bundle command line, ``scripts/segment_slides.py``, the MONAI Deploy app and the MONAI Label tasks. An image is a
one-tile slide: both are read by :func:`bundle.io.slides.open_source` and give the same file set
(:mod:`bundle.io.writers`) into ``<output_dir>/<name>/``.

Stages, one module each:

- read: :mod:`bundle.io.slides` (slides through MONAI's ``WSIReader``, images through PIL, at the model's
  resolution, refused from the header above ``max_image_megapixels``), tissue on a thumbnail;
- check: :mod:`bundle.pipeline.check` (inputs, output names, output folder, before any compute);
- predict: :class:`bundle.pipeline.predict.TilePredictor` on tiles of :class:`bundle.pipeline.tiles.TileGrid`;
- split: :class:`bundle.pipeline.split.InstanceSplitter` (h-maxima markers on the distance head, watershed);
- measure: :func:`bundle.pipeline.measure.measure_nuclei`, each nucleus kept by the one tile whose core holds
  its centroid, so nuclei across tile borders are neither duplicated nor cut (the margin exceeds a nucleus); the
  nuclei near a shared border (up to :data:`BORDER_REACH` pixels beyond it, by centroid) are grouped across it
  by :class:`bundle.pipeline.borders.BorderNuclei`, and each group is kept as one tile split it;
- write: :mod:`bundle.io.writers` and the per-input summary; ``report.json`` (:mod:`bundle.pipeline.report`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from bundle.allocator import keep_freed_memory
from bundle.data.datalists import read_organ_table
from bundle.errors import InputError
from bundle.io.slides import check_mpp, open_source, read_region_padded, tissue_mask
from bundle.io.writers import OVERLAY_SIDE, write_csv, write_geojson, write_instances, write_mask_png, write_overlay
from bundle.networks.text_prior import GENERIC, OrganPrompts, PromptedNetwork, uses_text
from bundle.pipeline.borders import BorderNuclei, Edges
from bundle.pipeline.check import check_output_dir, list_inputs, output_names
from bundle.pipeline.inferers import context_inferer
from bundle.pipeline.measure import Nucleus, density_per_mm2, measure_nuclei
from bundle.pipeline.nucleus_table import NucleusTable
from bundle.pipeline.predict import TilePredictor
from bundle.pipeline.report import RunReport
from bundle.pipeline.runtimes import CONVERTING_RUNTIMES, network_for_runtime, resolve_bf16, resolve_runtime
from bundle.pipeline.split import InstanceSplitter
from bundle.pipeline.tiles import Box, TileGrid
from bundle.training.checkpoints import load_state_dict

__all__ = ["NucleusSegmenter", "RegionResult", "peak_rss_mb"]
logger = logging.getLogger(__name__)
MIN_SIDE = 16  # pixels at model resolution: smaller inputs are refused (smaller than a few nuclei)
BORDER_REACH = 32.0  # model pixels beyond a border between tiles up to which a tile measures nuclei (at most half the margin); see BorderNuclei


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class RegionResult:
    """The nuclei of a region (on disk, ``nuclei[k]`` has id k + 1; close it when done) and what it cost: tiles
    processed and skipped, network windows skipped inside the processed tiles, model pixels processed."""

    def __init__(self, spill_dir: Optional[Union[str, os.PathLike]] = None) -> None:
        self.nuclei = NucleusTable(spill_dir)
        self.tiles = self.processed = self.skipped = self.windows_skipped = self.processed_px = 0


@dataclass(frozen=True)
class TileWindow:
    """One tile to segment: its core (model pixels of the region), the level-0 window read around it
    (x0, y0, x1, y1), the size that window is read at (model pixels, (h, w)), the level-0 pixels per read pixel
    (x, y; the model's scale up to the rounding of ``out_shape``), the core in the read tile's pixel indices
    (row0, col0, row1, col1), widened by :data:`BORDER_REACH` across shared edges, within which its nuclei are
    measured, the level-0 box (x0, y0, x1, y1) it owns, and which of its edges (left, top, right, bottom) it shares
    with another tile (see :class:`bundle.pipeline.borders.BorderNuclei`)."""

    core: Box
    level0: Tuple[int, int, int, int]
    out_shape: Tuple[int, int]
    keep: Tuple[float, float, float, float]
    pixel_size: Tuple[float, float]
    owned: Tuple[float, float, float, float] = (0.0, 0.0, math.inf, math.inf)
    edges: Edges = (False, False, False, False)


class TissueWindows:
    """Where the network's windows are worth computing: the thumbnail's tissue mask widened by half a window
    (``reach`` model pixels), read for each tile at the tile's size.

    Args:
        tissue: bool tissue mask of the source's thumbnail.
        down: level-0 pixels per thumbnail pixel.
        scale: model pixels per level-0 pixel.
        reach: model pixels the mask is widened by.
    """

    def __init__(self, tissue: np.ndarray, down: float, scale: float, reach: int):
        radius = int(math.ceil(reach / max(scale * down, 1e-6)))
        self.mask = ndimage.maximum_filter(tissue, size=2 * radius + 1) if radius > 0 else tissue
        self.down = float(down)

    def tile(self, window: TileWindow) -> np.ndarray:
        """(h, w) bool of a tile of ``window.out_shape`` over the level-0 box ``window.level0``."""
        lx0, ly0, lx1, ly1 = window.level0
        (h, w), (th, tw) = window.out_shape, self.mask.shape
        rows = ((ly0 + (np.arange(h) + 0.5) * (ly1 - ly0) / h) / self.down).astype(np.int64).clip(0, th - 1)
        cols = ((lx0 + (np.arange(w) + 0.5) * (lx1 - lx0) / w) / self.down).astype(np.int64).clip(0, tw - 1)
        return self.mask[np.ix_(rows, cols)]


class NucleusSegmenter:
    """Segments nuclei in images and slides and writes the instance TIFF, mask, GeoJSON, CSV, overlay and summary.

    Args:
        network: (B, 3, H, W) in [0, 1] -> (B, C, H, W) logits (nucleus[, distance]); eager or TorchScript.
        inferer: called as ``inferer(image, network)`` on one tile (1, 3, h, w); a sliding-window inferer.
        splitter: probability (and distance) -> instance labels.
        checkpoint: weights to load into ``network`` (``None``: use it as it is, e.g. a TorchScript model).
        device: where the network runs.
        patch_size: (height, width) of the inferer's windows; smaller tiles are padded to it.
        model_mpp: microns per pixel the network was trained at.
        tile_size: tile core side in model pixels.
        margin: context read around each tile, in model pixels; must exceed the largest nucleus diameter.
        max_image_megapixels: plain images (PNG, JPEG, plain TIFF) above this are refused from their header,
            before decoding (memory: 3 bytes a pixel); slides are read tile by tile whatever their size.
        max_mask_megapixels: ``<name>_seg.png`` is written for inputs up to this size (1 byte a pixel in memory);
            the instance TIFF holds the mask of larger ones.
        amp: compute the network in bfloat16: PyTorch under autocast (see :class:`TilePredictor`), OpenVINO with
            its bfloat16 precision (ONNX Runtime stays float32); ``"auto"``: where bfloat16 is native on the device
            (a CUDA GPU, or a CPU with AMX or AMD's AVX-512 BF16; :func:`bundle.pipeline.runtimes.resolve_bf16`).
        channels_last: run the network in the channels-last memory format.
        stain_normalizer: applied to every tile before the network (see :class:`TilePredictor`); None: none.
        runtime: ``"torch"``, ``"torch_compile"``, or ``"openvino"`` / ``"onnxruntime"`` (the network converted,
            CPU only); ``"auto"``: the fastest whose masks agree with float32 for ``amp``
            (:func:`bundle.pipeline.runtimes.resolve_runtime`); see :mod:`bundle.pipeline.runtimes`.
        tile_workers: threads that read the next tiles and split and measure the previous ones while the network
            runs (0: one tile after the other; the nuclei are the same either way).
        skip_background_windows: inside a tile, do not compute the network's windows that lie more than half a
            window from the tissue of the thumbnail's mask (:class:`bundle.pipeline.predict.TissueGatedNetwork`);
            they predict background. Nuclei in tissue are the same either way; False: every window is computed.
        progress: show a progress bar over tiles.
        text_prior_file: a text prior with organ prompts (``models/text_prior.pt``); None: every input gets the
            network's own (generic) prompts.
        organ: the organ of every input unless :meth:`segment` is told another (``"breast"``; None or
            ``"unknown"``: the generic prompts; an organ without prompts falls back to them with a warning that
            lists the known organs).

    Raises:
        InputError: the checkpoint is missing or not a checkpoint of this network.
        ValueError: a size or margin that is not positive.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        inferer: Callable[[torch.Tensor, Callable], torch.Tensor],
        splitter: InstanceSplitter = InstanceSplitter(),
        checkpoint: Optional[Union[str, os.PathLike]] = None,
        device: Union[str, torch.device] = "cpu",
        patch_size: Sequence[int] = (256, 256),
        model_mpp: float = 0.25,
        tile_size: int = 1024,
        margin: int = 64,
        max_image_megapixels: float = 64.0,
        max_mask_megapixels: float = 64.0,
        amp: Union[bool, str] = False,
        channels_last: bool = False,
        stain_normalizer: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        runtime: str = "torch",
        tile_workers: int = 2,
        skip_background_windows: bool = True,
        progress: bool = True,
        text_prior_file: Optional[Union[str, os.PathLike]] = None,
        organ: Optional[str] = None,
    ):
        if tile_size <= 0 or margin < 0 or model_mpp <= 0:
            raise ValueError(f"tile_size and model_mpp must be positive and margin non-negative, got {tile_size}, {model_mpp}, {margin}")
        keep_freed_memory(arenas=1)  # tiles reuse freed memory, one arena for every thread (bundle.allocator)
        self.device = torch.device(device)
        self.bf16 = resolve_bf16(amp, self.device)
        runtime = resolve_runtime(runtime, self.device, self.bf16)
        if runtime in CONVERTING_RUNTIMES and self.device.type != "cpu":
            raise ValueError(f"runtime {runtime!r} runs on the CPU, got device {self.device}")
        self.network = network.to(self.device).eval()
        self.runtime, self.patch_size = runtime, patch_size
        self.weights = None if checkpoint is None else str(checkpoint)  # reported in every summary
        if checkpoint is not None:
            self._load_state(load_state_dict(checkpoint), checkpoint)
        self.prompts = OrganPrompts(text_prior_file) if text_prior_file is not None and uses_text(self.network) else None
        self.organ = organ
        self._converted: Optional[Callable[..., torch.Tensor]] = None  # the network in the runtime, made once
        self._runners: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}  # per organ prompts, made on first use
        autocast = self.bf16 and runtime not in CONVERTING_RUNTIMES  # a converted network has its own precision
        self.predictor = TilePredictor(self._runner(GENERIC), inferer, self.device, patch_size, autocast, stain_normalizer, channels_last)
        self.context = context_inferer(inferer)  # a context inferer: each tile's canvas is read from the source
        self.splitter = splitter
        self.model_mpp = float(model_mpp)
        self.tile_size, self.margin = int(tile_size), int(margin)
        self.max_image_pixels = int(max_image_megapixels * 1e6)
        self.max_mask_pixels = int(max_mask_megapixels * 1e6)
        if tile_workers < 0:
            raise ValueError(f"tile_workers must be >= 0, got {tile_workers}")
        self.tile_workers = int(tile_workers)
        self.skip_background_windows = bool(skip_background_windows)
        self.progress = progress
        self._tissue_windows: Optional[TissueWindows] = None  # of the region being segmented

    def load_weights(self, checkpoint: Union[str, os.PathLike]) -> None:
        """Load a checkpoint (state dict, or ``{"model": state_dict}``) into the network.

        Raises:
            InputError: missing file, not a torch checkpoint, or weights of another network.
        """
        self._load_state(load_state_dict(checkpoint), checkpoint)
        self.weights = str(checkpoint)
        if self.runtime in CONVERTING_RUNTIMES:  # a converted network holds its own copy of the weights
            self._converted = None
            self._runners.clear()
            self.predictor.network = self._runner(GENERIC)

    def resolve_organ(self, organ: Optional[str] = None) -> str:
        """Whose prompts an input of ``organ`` (default: the segmenter's ``organ``) gets: the organ, or
        ``"generic"`` (see :meth:`bundle.networks.text_prior.OrganPrompts.resolve`; always without organ prompts)."""
        organ = organ if organ is not None else self.organ
        return GENERIC if self.prompts is None else self.prompts.resolve(organ)

    def _runner(self, prompts: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """The network in the runtime with the prompts of ``prompts`` (a resolved organ). The network is converted
        (or compiled) once, with the prompts as an input when it has organ prompts, and every organ shares it, so
        memory does not grow with the number of organs."""
        if self._converted is None:
            text_shape = None if self.prompts is None else tuple(self.network.text_prior.shape)
            self._converted = network_for_runtime(self.network, self.runtime, self.patch_size, text_shape, self.bf16)
        if self.prompts is None:
            return self._converted
        if prompts not in self._runners:
            text = self.network.text_prior if prompts == GENERIC else self.prompts.text(prompts)
            self._runners[prompts] = PromptedNetwork(self._converted, text).to(self.device)
        return self._runners[prompts]

    def _load_state(self, state: Dict[str, torch.Tensor], checkpoint: Union[str, os.PathLike]) -> None:
        """Load ``state`` (read from ``checkpoint``) into the network; InputError when it does not fit."""
        try:
            self.network.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise InputError(f"{checkpoint}: not a checkpoint of this network ({first})") from e

    def predict(self, rgb: np.ndarray, organ: Optional[str] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """The predict stage alone on one RGB uint8 tile (h, w, 3) at the model's resolution: nucleus probability
        and normalised distance (h, w) float32 (see :class:`TilePredictor`), with ``organ``'s prompts."""
        self.predictor.network = self._runner(self.resolve_organ(organ))
        return self.predictor(rgb)

    @staticmethod
    def find_tissue(source: Any) -> Tuple[np.ndarray, np.ndarray, float]:
        """The source's thumbnail (RGB, at most ``OVERLAY_SIDE`` pixels a side), its tissue mask (bool, same size)
        and its downsample from level 0: where :meth:`segment_region` computes."""
        thumb, down = source.thumbnail(OVERLAY_SIDE)
        return thumb, tissue_mask(thumb), down

    # -- predict, split, measure a region -------------------------------------------------------------------------
    def segment_region(
        self,
        source: Any,
        box: Optional[Box] = None,
        tissue: Optional[np.ndarray] = None,
        tissue_down: float = 1.0,
        organ: Optional[str] = None,
        spill_dir: Optional[Union[str, os.PathLike]] = None,
    ) -> RegionResult:
        """The nuclei of a level-0 box of an open source (the whole of it by default), tile by tile.

        Args:
            source: from :func:`bundle.io.slides.open_source`.
            box: (x0, y0, x1, y1) in level-0 pixels.
            tissue: bool tissue mask of the source's thumbnail; tiles with no tissue within
                :data:`BORDER_REACH` model pixels of their core are skipped (None: none are).
            tissue_down: level-0 pixels per thumbnail pixel.
            organ: the tissue's organ, for the network's prompts (see :meth:`resolve_organ`).
            spill_dir: an existing folder where the nuclei are kept until they are written (see
                :class:`~bundle.pipeline.nucleus_table.NucleusTable`; None: the system's temporary folder).

        Raises:
            InputError: the region is smaller than :data:`MIN_SIDE` model pixels.
            SlideReadError: a region of the slide cannot be read.
        """
        x0, y0, x1, y1 = box if box is not None else (0, 0, source.width, source.height)
        scale = source.mpp / self.model_mpp  # model pixels per level-0 pixel
        mw, mh = round((x1 - x0) * scale), round((y1 - y0) * scale)
        if min(mw, mh) < MIN_SIDE:
            raise InputError(
                f"{source.path}: {mw} x {mh} pixels at the model's {self.model_mpp} um/px is below the minimum of {MIN_SIDE} pixels a side"
            )
        grid = TileGrid(mw, mh, self.tile_size, self.margin)
        result = RegionResult(spill_dir)
        result.tiles = len(grid)
        windows: List[TileWindow] = []
        reach = min(BORDER_REACH, self.margin / 2)  # nuclei further out are cut by the read window
        # a tile is computed where tissue lies within its reach: a nucleus at the tissue's edge whose centroid is in
        # this tile is measured by its neighbour too, but only this tile can own it
        near_tissue = None if tissue is None else TissueWindows(tissue, tissue_down, scale, int(math.ceil(reach))).mask
        for core, read in grid:
            if near_tissue is not None and not self._has_tissue(near_tissue, core, (x0, y0), scale, tissue_down):
                result.skipped += 1
                continue
            lx0, ly0 = x0 + int(math.floor(read[0] / scale)), y0 + int(math.floor(read[1] / scale))
            lx1, ly1 = min(x1, x0 + int(math.ceil(read[2] / scale))), min(y1, y0 + int(math.ceil(read[3] / scale)))
            out_shape = (max(1, round((ly1 - ly0) * scale)), max(1, round((lx1 - lx0) * scale)))
            px, py = (lx1 - lx0) / out_shape[1], (ly1 - ly0) / out_shape[0]  # level-0 pixels per read pixel
            # ownership in level-0 pixels, the same boundary for neighbouring tiles whatever their rounding: a
            # nucleus is kept where its centroid (pixel index + 0.5) falls inside the core
            cx0, cy0, cx1, cy1 = (x0 + core[0] / scale, y0 + core[1] / scale, x0 + core[2] / scale, y0 + core[3] / scale)
            edges = (core[0] > 0, core[1] > 0, core[2] < mw, core[3] < mh)
            keep = ((cy0 - ly0) / py - 0.5 - reach * edges[1], (cx0 - lx0) / px - 0.5 - reach * edges[0],
                    (cy1 - ly0) / py - 0.5 + reach * edges[3], (cx1 - lx0) / px - 0.5 + reach * edges[2])
            windows.append(TileWindow(core, (lx0, ly0, lx1, ly1), out_shape, keep, (px, py), (cx0, cy0, cx1, cy1), edges))
        self.predictor.network = self._runner(self.resolve_organ(organ))
        self._tissue_windows = None
        if tissue is not None and self.skip_background_windows and self.context is None:
            self._tissue_windows = TissueWindows(tissue, tissue_down, scale, max(self.patch_size) // 2)
        progress = tqdm(total=len(windows), desc=source.path.name, unit="tile", disable=not self.progress, leave=False)
        skipped_before = self.predictor.windows_skipped
        borders = BorderNuclei(reach / scale, [y0 + top / scale for top in range(0, mh, self.tile_size)])
        row = 0
        for tile, (window, nuclei) in enumerate(self._run_tiles(source, windows)):
            if window.core[1] // self.tile_size != row:
                row = window.core[1] // self.tile_size
                result.nuclei.extend(borders.resolve(row))  # the groups on the borders above this row
            result.nuclei.extend(borders.sort(tile, nuclei, window.owned, window.edges))
            result.processed += 1
            result.processed_px += (window.core[2] - window.core[0]) * (window.core[3] - window.core[1])
            progress.update()
        progress.close()
        result.nuclei.extend(borders.resolve())
        result.windows_skipped = self.predictor.windows_skipped - skipped_before
        return result

    def _read_tile(self, source: Any, window: "TileWindow") -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        """The tile's RGB and what the predictor takes besides: ``tissue``, where its windows are worth computing
        (see :class:`TissueWindows`), or, for a network with a context view (DA-RefineNet), ``context``, the canvas
        around it read from the source (see :class:`bundle.pipeline.inferers.ContextWindowInferer`)."""
        lx0, ly0, lx1, ly1 = window.level0
        rgb = source.read_region(lx0, ly0, lx1 - lx0, ly1 - ly0, window.out_shape)
        needs = self.context
        if needs is None or min(window.out_shape[0] - self.patch_size[0], window.out_shape[1] - self.patch_size[1]) < 0:
            return rgb, ({} if self._tissue_windows is None else {"tissue": self._tissue_windows.tile(window)})
        (mh, mw), scale = needs.margin(), window.out_shape[1] / max(1, lx1 - lx0)  # model pixels per level-0 pixel
        box = (lx0 - round(mw / scale), ly0 - round(mh / scale), lx1 + round(mw / scale), ly1 + round(mh / scale))
        return rgb, {"context": read_region_padded(source, box, needs.canvas_shape(*window.out_shape))}

    def _finish_tile(self, source: Any, window: "TileWindow", rgb: np.ndarray, maps: Tuple[Any, Any]) -> List[Nucleus]:
        """Split and measure one predicted tile: the nuclei whose centroid lies in its core."""
        labels = self.splitter(*maps)
        return measure_nuclei(labels, rgb, self.model_mpp, source.mpp, origin=window.level0[:2], keep=window.keep, pixel_size=window.pixel_size)

    def _run_tiles(self, source: Any, windows: List["TileWindow"]) -> Iterator[Tuple["TileWindow", List[Nucleus]]]:
        """Read -> predict -> split and measure each tile, in order. With ``tile_workers`` > 0, worker threads read
        the next tiles and split the previous ones while the network runs on the current one (at most
        ``tile_workers`` tiles ahead and behind, so memory stays bounded); with 0, one tile after the other."""
        if self.tile_workers == 0:
            for window in windows:
                rgb, extra = self._read_tile(source, window)
                yield window, self._finish_tile(source, window, rgb, self.predictor(rgb, **extra))
            return
        ahead = self.tile_workers
        with ThreadPoolExecutor(max_workers=self.tile_workers, thread_name_prefix="tile") as pool:
            reading: Deque[Tuple[TileWindow, Future]] = deque()
            finishing: Deque[Tuple[TileWindow, Future]] = deque()
            pending = iter(windows)
            for window in islice(pending, ahead):
                reading.append((window, pool.submit(self._read_tile, source, window)))
            while reading:
                window, read = reading.popleft()
                rgb, extra = read.result()
                for nxt in islice(pending, 1):
                    reading.append((nxt, pool.submit(self._read_tile, source, nxt)))
                maps = self.predictor(rgb, **extra)
                finishing.append((window, pool.submit(self._finish_tile, source, window, rgb, maps)))
                while len(finishing) > ahead:
                    done, future = finishing.popleft()
                    yield done, future.result()
            while finishing:
                done, future = finishing.popleft()
                yield done, future.result()

    @staticmethod
    def _has_tissue(tissue: np.ndarray, core: Box, origin: Tuple[int, int], scale: float, down: float) -> bool:
        """Whether the thumbnail's tissue mask meets a tile core (model pixels of a region at level-0 ``origin``)."""
        tx0, ty0 = int((origin[0] + core[0] / scale) / down), int((origin[1] + core[1] / scale) / down)
        tx1 = max(tx0 + 1, int(math.ceil((origin[0] + core[2] / scale) / down)))
        ty1 = max(ty0 + 1, int(math.ceil((origin[1] + core[3] / scale) / down)))
        return bool(tissue[ty0:ty1, tx0:tx1].any())

    # -- one input ------------------------------------------------------------------------------------------------
    def segment(
        self,
        path: Union[str, os.PathLike],
        output_dir: Union[str, os.PathLike],
        mpp: Optional[float] = None,
        name: Optional[str] = None,
        organ: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Segment one image or slide and write its files into ``output_dir/<name>/``; returns the summary.

        Args:
            path: the image or slide.
            output_dir: the batch's output folder.
            mpp: microns per pixel of level 0, overriding the file's (images without it are assumed at the model's).
            name: output name (default: the file's stem).
            organ: the input's organ (default: the segmenter's ``organ``), for the network's prompts.

        Raises:
            InputError: the input cannot be used (the message names it and the problem).
            OSError: the outputs cannot be written.
        """
        t0 = time.perf_counter()
        source = open_source(path, mpp, default_mpp=self.model_mpp, max_pixels=self.max_image_pixels)
        thumb, tissue, thumb_down = self.find_tissue(source)
        prompts = self.resolve_organ(organ)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        region = self.segment_region(source, tissue=tissue, tissue_down=thumb_down, organ=prompts, spill_dir=output_dir)
        name = name or source.path.stem
        out = Path(output_dir) / name
        mask = np.zeros((source.height, source.width), np.uint8) if source.width * source.height <= self.max_mask_pixels else None
        with region.nuclei as nuclei:
            count = len(nuclei)
            out.mkdir(parents=True, exist_ok=True)
            files = {
                "instances": write_instances(out / f"{name}_instances.tif", nuclei, source.width, source.height, source.mpp, mask),
                "geojson": write_geojson(out / f"{name}.geojson", nuclei),
                "csv": write_csv(out / f"{name}_nuclei.csv", nuclei),
                "overlay": write_overlay(out / f"{name}_overlay.png", thumb, thumb_down, tissue, nuclei),
            }
        if mask is not None:
            files["mask"] = write_mask_png(out / f"{name}_seg.png", mask)
        seconds = time.perf_counter() - t0
        tissue_um2 = float(tissue.sum()) * (source.mpp * thumb_down) ** 2
        summary: Dict[str, Any] = {
            "input": str(source.path),
            "name": name,
            "kind": type(source).__name__.replace("Source", "").lower(),
            "width": source.width,
            "height": source.height,
            "mpp": source.mpp,
            "mpp_source": source.mpp_source,
            "model_mpp": self.model_mpp,
            "conversion": source.conversion,
            "nucleus_count": count,
            "tissue_area_mm2": round(tissue_um2 * 1e-6, 6),
            "nuclei_per_mm2_tissue": round(density_per_mm2(count, tissue_um2), 2) if tissue_um2 > 0 else None,
            "tiles": region.tiles,
            "tiles_processed": region.processed,
            "tiles_skipped_background": region.skipped,
            "windows_skipped_background": region.windows_skipped,
            "seconds": round(seconds, 2),
            "megapixels_level0": round(source.width * source.height / 1e6, 3),
            "mpx_per_s_level0": round(source.width * source.height / 1e6 / seconds, 4),
            "megapixels_processed_model": round(region.processed_px / 1e6, 3),
            "mpx_per_s_processed_model": round(region.processed_px / 1e6 / seconds, 4),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "device": str(self.device),
            "runtime": self.runtime,
            "precision": "bfloat16" if self.bf16 else "float32",
            "weights": self.weights,
            "organ": organ if organ is not None else self.organ,
            "prompts": prompts,
            "files": {k: str(v) for k, v in files.items()},
        }
        if not count:
            summary["message"] = "no tissue detected" if not tissue.any() else "tissue detected but no nuclei found"
        (out / f"{name}_summary.json").write_text(json.dumps(summary, indent=2))
        logger.info("%s: %d nuclei, %d/%d tiles, %.1f s -> %s", source.path, count, region.processed, region.tiles, seconds, out)
        return summary

    # -- a batch --------------------------------------------------------------------------------------------------
    def run(
        self,
        input_path: Union[str, os.PathLike],
        output_dir: Union[str, os.PathLike],
        mpp: Optional[float] = None,
        organ_csv: Optional[Union[str, os.PathLike]] = None,
    ) -> RunReport:
        """Segment a file or every image and slide in a folder; a bad input is skipped and reported, the rest goes on.

        The output folder is checked first; ``<output_dir>/report.json`` (:mod:`bundle.pipeline.report`) is
        written after every input.

        Args:
            organ_csv: a CSV with ``id`` (file stem) or ``image`` (file name) and ``organ`` columns: each listed
                input's organ (see :func:`bundle.data.datalists.read_organ_table`); the others get ``organ``.

        Raises:
            InputError: a bad ``mpp``, an unreadable ``organ_csv``, the output folder is not writable,
                ``input_path`` does not exist, a folder holds no input.
        """
        mpp = check_mpp(mpp)
        organs = read_organ_table(organ_csv) if organ_csv else {}
        check_output_dir(output_dir)
        report = RunReport(output_dir)
        try:
            inputs, ignored = list_inputs(input_path)
        except InputError:
            report.save()
            raise
        report.add_ignored(ignored)
        for path, name in output_names(inputs).items():
            self.segment_into(report, path, output_dir, mpp, name, organs.get(Path(path).stem) or None)
        report.save()
        logger.info("%d written, %d skipped -> %s", len(report.written), len(report.skipped), report.path)
        return report

    def segment_into(
        self,
        report: RunReport,
        path: Union[str, os.PathLike],
        output_dir: Union[str, os.PathLike],
        mpp: Optional[float] = None,
        name: Optional[str] = None,
        organ: Optional[str] = None,
    ) -> None:
        """:meth:`segment` one input of a batch into its report: written, or skipped with the reason (a bad input,
        outputs that cannot be written, out of memory), so that the batch goes on. The other arguments are
        :meth:`segment`'s."""
        try:
            report.add_written(self.segment(path, output_dir, mpp, name, organ))
        except InputError as e:
            report.add_skipped(path, str(e))
        except OSError as e:
            report.add_skipped(path, f"{path}: cannot write its outputs to {Path(output_dir) / (name or Path(path).stem)} ({e.strerror or e})")
        except MemoryError:
            report.add_skipped(path, f"{path}: out of memory while segmenting it")
