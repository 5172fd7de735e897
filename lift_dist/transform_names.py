"""The names of what lift_dist.transforms offers, without importing it (torchvision costs ~2 s): the
configuration checks its settings against these before anything heavy is imported."""

INTERPOLATION_NAMES = ("bilinear", "bicubic")
MDA_SCHEDULES = ("convex", "linear", "concave", "min", "max")
TTE_MODES = ("fivecrop", "tencrop", "randaug")  # randaug: LIFT's random views (RandomResizedCrop + flip)
AUGMENTATIONS = ("lift", "mda", "none")  # LIFT RandomResizedCrop + flip | LIFT+ minimalist | eval transform
