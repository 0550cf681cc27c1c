"""Per-run training checkpoints: one small file per run, overwritten each time.

A retried run (its worker died) continues from its file; the file goes when the run ends.
Files live under the study's results folder, a local/shared path or a URI pyarrow can open
(s3://, gs://, hdfs://): no Tune checkpoint bookkeeping or experiment-state snapshots per
epoch.
"""

from __future__ import annotations

import io
from typing import Any

__all__ = ["CheckpointStore"]


class CheckpointStore:
    def __init__(self, folder: str) -> None:
        import pyarrow.fs as pafs

        if "://" in folder:
            self.fs, self.base = pafs.FileSystem.from_uri(folder)
        else:
            self.fs, self.base = pafs.LocalFileSystem(), folder
        self.fs.create_dir(self.base, recursive=True)

    def _path(self, key: str) -> str:
        return f"{self.base.rstrip('/')}/{key}.pt"

    def load(self, key: str, map_location: Any = "cpu") -> dict[str, Any] | None:
        import pyarrow.fs as pafs
        import torch

        path = self._path(key)
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_file(path) as f:
            return torch.load(io.BytesIO(f.readall()), map_location=map_location,
                              weights_only=False)

    def save(self, key: str, state: dict[str, Any]) -> None:
        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        path = self._path(key)
        tmp = path + ".tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(buf.getvalue())
        self.fs.move(tmp, path)  # atomic on a local file system: never a torn file

    def delete(self, key: str) -> None:
        import pyarrow.fs as pafs

        path = self._path(key)
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            self.fs.delete_file(path)

    def clear(self) -> None:
        """Delete every checkpoint (a resumed execution starts its unfinished runs afresh)."""
        self.fs.delete_dir_contents(self.base, missing_dir_ok=True)
