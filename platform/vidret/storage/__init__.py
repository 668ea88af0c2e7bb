"""Paths and I/O over local files, ``file://`` and ``s3://`` (s3fs), with atomic writes and bounded retries.

```python
st = Storage(cfg.storage)
st.write_text("s3://bucket/runs/a.json", "{}")
with st.atomic_write("runs/x.bin") as f:
    f.write(b"...")
fs, path = st.pyarrow_fs("s3://bucket/manifest.parquet")
```
"""

from vidret.storage.errors import StorageError, StorageNotFoundError, StoragePermissionError
from vidret.storage.store import Storage
from vidret.storage.uri import Location, is_remote, join, parse_uri

__all__ = [
    "Location",
    "Storage",
    "StorageError",
    "StorageNotFoundError",
    "StoragePermissionError",
    "is_remote",
    "join",
    "parse_uri",
]
