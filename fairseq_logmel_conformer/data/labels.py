"""Label vocabularies and per-clip label files for fine-tuning."""
import os
from dataclasses import dataclass
from typing import List


@dataclass
class LabelVocabulary:
    """Class names in class-index order, read from ``labels.txt``: one ``name[<TAB>display name]`` per line."""

    names: List[str]
    display_names: List[str]

    def __post_init__(self):
        self.index = {name: i for i, name in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def read(cls, path: str) -> "LabelVocabulary":
        if not os.path.isfile(path):
            raise FileNotFoundError(f"label vocabulary {path} does not exist")
        names, display_names = [], []
        with open(path) as f:
            for line_number, line in enumerate(f, start=1):
                fields = line.rstrip("\n").split("\t")
                name = fields[0].strip()
                if not name:
                    raise ValueError(f"{path}:{line_number}: empty label name")
                if name in names:
                    raise ValueError(f"{path}:{line_number}: label {name!r} is listed twice")
                names.append(name)
                display_names.append(fields[1].strip() if len(fields) > 1 else name)
        if not names:
            raise ValueError(f"{path}: the label vocabulary is empty")
        return cls(names, display_names)


def read_label_file(path: str, vocabulary: LabelVocabulary, num_clips: int, single_label: bool) -> List[List[int]]:
    """Class indices of each clip from ``path`` (one line per manifest entry, names comma-separated).

    Raises ``ValueError`` naming the file and line for an unknown name, for an
    empty line or a line with several names when ``single_label``, and for a
    line count different from the manifest's ``num_clips``. An empty line in a
    multi-label file means the clip has no positive class.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label file {path} does not exist")
    with open(path) as f:
        lines = f.read().splitlines()
    if len(lines) != num_clips:
        raise ValueError(f"{path}: {len(lines)} label lines, but the manifest lists {num_clips} clips")
    labels = []
    for line_number, line in enumerate(lines, start=1):
        names = [name.strip() for name in line.split(",") if name.strip()]
        if single_label and len(names) != 1:
            raise ValueError(f"{path}:{line_number}: expected exactly one label for a single-label task, got {line!r}")
        unknown = [name for name in names if name not in vocabulary.index]
        if unknown:
            raise ValueError(f"{path}:{line_number}: unknown label(s) {unknown}, not in the label vocabulary")
        labels.append([vocabulary.index[name] for name in names])
    return labels
