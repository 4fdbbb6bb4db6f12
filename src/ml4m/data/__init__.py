"""ml4m.data: read, validate, split, reference energies, neighbour lists, pack, generate.

The first stage of the pipeline. Everything downstream consumes :class:`Frame` /
:class:`Dataset` objects (or a :class:`PackedStore` streamed from disk).
"""

from ml4m.data.default import default_dataset, default_dataset_path
from ml4m.data.frames import LABELS, Dataset, Frame
from ml4m.data.generation import GenerateConfig, generate, make_calculator, plan_tasks
from ml4m.data.labels import LabelKeys
from ml4m.data.neighbors import (
    NeighborList,
    batched_neighbor_list,
    nearest_neighbor_distance,
    neighbor_list,
    pair_inner_radii,
    shortest_distances,
)
from ml4m.data.read import iter_frames, open_frames, read_dataset, read_structure
from ml4m.data.reference import (
    composition_matrix,
    fit_reference_energies,
    resolve_reference_energies,
)
from ml4m.data.split import Split, evenly_spaced, frame_groups, split_dataset, split_indices
from ml4m.data.stats import summarize
from ml4m.data.store import PackedStore, StoreWriter, open_store, pack_frames
from ml4m.data.validate import MIN_DISTANCE, check_frame
from ml4m.data.write import copy_frames, write_extxyz

__all__ = [
    "LABELS",
    "MIN_DISTANCE",
    "Dataset",
    "Frame",
    "GenerateConfig",
    "LabelKeys",
    "NeighborList",
    "PackedStore",
    "Split",
    "StoreWriter",
    "batched_neighbor_list",
    "check_frame",
    "evenly_spaced",
    "composition_matrix",
    "default_dataset",
    "default_dataset_path",
    "fit_reference_energies",
    "generate",
    "iter_frames",
    "make_calculator",
    "nearest_neighbor_distance",
    "neighbor_list",
    "open_store",
    "pack_frames",
    "pair_inner_radii",
    "plan_tasks",
    "read_dataset",
    "open_frames",
    "read_structure",
    "resolve_reference_energies",
    "shortest_distances",
    "split_dataset",
    "frame_groups",
    "split_indices",
    "summarize",
    "write_extxyz",
    "copy_frames",
]
