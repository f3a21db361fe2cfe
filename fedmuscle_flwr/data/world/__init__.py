"""Procedural multi-task world: the offline default data, generated from a seed.

Every image holds 1..``max_shapes`` coloured shapes on a noisy, softly shaded background.
Exactly one shape is *large* (the scene's main shape, drawn first); the others are small,
drawn on top of it, each in its own cell of a 3x3 grid and each in its own colour. From
one scene come all the task views:

- ``label``: one class per image, by default the kind of the main (large) shape;
  ``WorldConfig.label_by`` may pick its colour, its position or the number of shapes.
- ``labels``: multi-hot over shape kinds, exactly the kinds visible in the mask.
- ``mask``: per-pixel class id, ``kind + 1`` where a shape is visible, 0 for background.
- ``text``: a caption in words naming each shape's size, colour, kind and position, main
  shape first ("a large red circle at the top left and a small blue square in the centre"),
  so every ``label_by`` choice can be read from the caption alone. With
  ``WorldConfig.caption_synonyms`` above 0 that share of shapes is named by one of its
  kind's rarer names (``KIND_SYNONYMS``: "a large red disc"), which few labelled captions
  cover.

Each data set (the public image+caption set and one private set per task type) comes from
its own random stream. A stream is generated in chunks of :data:`CHUNK` scenes, each
seeded from ``(seed, stream, chunk index)``, so a smaller set is a prefix of a larger one.
Generated arrays are cached as ``.npz`` files keyed by a hash of what determines them.

Modules, by job: :mod:`~.config` (vocabulary, :class:`WorldConfig`, :class:`Scenes`),
:mod:`~.rendering` (rasterising), :mod:`~.generation` (seeded streams), :mod:`~.cache`
(the ``.npz`` cache) and :mod:`~.views` (captions, labels, the data sets).
"""

from fedmuscle_flwr.data.world.cache import cache_path, default_cache_dir, load_scenes
from fedmuscle_flwr.data.world.config import (
    CHUNK,
    COLOURS,
    GENERATOR_VERSION,
    KIND_SYNONYMS,
    KINDS,
    POSITIONS,
    SYNONYMS_PER_KIND,
    TASKS,
    LabelBy,
    Scenes,
    WorldConfig,
)
from fedmuscle_flwr.data.world.generation import generate_scenes
from fedmuscle_flwr.data.world.views import (
    captions,
    class_names,
    num_classes,
    private_dataset,
    public_dataset,
    scene_labels,
    world_datasets,
)

__all__ = [
    "CHUNK",
    "COLOURS",
    "GENERATOR_VERSION",
    "KINDS",
    "KIND_SYNONYMS",
    "POSITIONS",
    "SYNONYMS_PER_KIND",
    "TASKS",
    "LabelBy",
    "Scenes",
    "WorldConfig",
    "cache_path",
    "captions",
    "class_names",
    "default_cache_dir",
    "generate_scenes",
    "load_scenes",
    "num_classes",
    "private_dataset",
    "public_dataset",
    "scene_labels",
    "world_datasets",
]
