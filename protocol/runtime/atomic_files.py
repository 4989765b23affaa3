"""Files that a crash leaves whole: the one way thinkmesh writes a file another process or a restart reads.

Every write goes the same way: a temporary file in the target's directory (so the rename stays on
one file system), the bytes written and fsynced, the temporary renamed over the target, then the
directory fsynced so the rename itself is on disk. A reader, or a restart after a crash or a power
loss, finds the old file or the whole new one, never a mix; a failed write leaves the old file as
it was and removes its temporary. The guarantees are POSIX's: rename is atomic within a directory,
and fsync of the directory makes its entries durable.

- `write_atomic(path, data)`: bytes or text.
- `atomic_path(path)`: a temporary path for writers that want a file name (`torch.save`,
  safetensors); the target is replaced when the block exits without an exception.
- `mode=PRIVATE_MODE` (0600) for secrets: the temporary is created with that mode, so the secret is never
  readable by others, not even for a moment. `exclusive=True` refuses to replace an existing file
  (`FileExistsError`): the new file is linked in place instead of renamed over the old.
- `durable=False`: the same rename, without the fsyncs, for files that a crash may lose as long as
  nobody has relied on them yet: a reader still never sees a torn file, and whoever later relies
  on them makes them durable in one barrier (`fsync_tree`). The coordinator writes a round's
  evidence this way and fsyncs the round's directory once, before its settlement intent names
  those files; a crash before that re-runs the round, whose files are discarded anyway.
- `replace_file(source, target)`: the last step alone, for a file another program wrote in full.
- `replace_directory(staging, target)`: the same for a directory written in full beside its target.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

DEFAULT_MODE = 0o666  # before the umask, as open() creates files
PRIVATE_MODE = 0o600  # secrets: keys, seeds, configs that name them
# Bytes per write(2). One call with megabytes is ~10x slower than the same bytes in 1 MiB calls on
# the ext4 these machines run (6.4 MB: 15.9 ms against 1.4 ms, page cache only): evidence files
# are megabytes, written once per contribution on the verifier's path.
WRITE_CHUNK = 1 << 20


def fsync_directory(directory: str | Path) -> None:
    """Makes the directory's entries (a rename, a creation, an unlink) durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    """Flushes a file's data to disk (a file written through another handle: fsync acts on the file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(source: str | Path, target: str | Path, *, durable: bool = True) -> None:
    """Renames the fully written file `source` over `target` (same directory, or at least the same
    file system), durably: `source` is fsynced before the rename and the directory after."""
    if durable:
        fsync_file(source)
    os.replace(source, target)
    if durable:
        fsync_directory(Path(target).parent)


@contextmanager
def atomic_path(
    path: str | Path, *, mode: int = DEFAULT_MODE, exclusive: bool = False, durable: bool = True,
) -> Iterator[Path]:
    """Yields an empty temporary file beside `path` (created with `mode`, less the umask) for the
    block to write by name; on a clean exit it is fsynced (unless not `durable`) and put in place,
    else removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
    try:
        yield tmp
        if exclusive:
            if durable:
                fsync_file(tmp)
            os.link(tmp, path)  # FileExistsError where `path` is taken, whatever the race
            if durable:
                fsync_directory(path.parent)
        else:
            replace_file(tmp, path, durable=durable)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(
    path: str | Path, data: bytes | str | Sequence[bytes], *, mode: int = DEFAULT_MODE, exclusive: bool = False,
    durable: bool = True,
) -> Path:
    """Writes `data` (text as UTF-8; a list or tuple of byte strings one after another, so a
    caller need not join megabytes first) to `path` as described above; returns `path`."""
    path = Path(path)
    pieces = data if isinstance(data, list | tuple) else (data,)
    with atomic_path(path, mode=mode, exclusive=exclusive, durable=durable) as tmp:
        fd = os.open(tmp, os.O_WRONLY)
        try:
            for piece in pieces:
                view = memoryview(piece.encode() if isinstance(piece, str) else piece)
                for start in range(0, len(view), WRITE_CHUNK):
                    chunk = view[start:start + WRITE_CHUNK]
                    while chunk:
                        chunk = chunk[os.write(fd, chunk):]
        finally:
            os.close(fd)
    return path


def fsync_tree(directory: str | Path) -> None:
    """fsyncs every file and directory below `directory`, deepest first, then `directory` itself."""
    for root, _dirs, files in os.walk(directory, topdown=False):
        for name in files:
            fsync_file(os.path.join(root, name))
        fsync_directory(root)


def replace_directory(staging: str | Path, target: str | Path) -> None:
    """Puts the fully written directory `staging` at `target`, durably: its files are fsynced, the
    old target is kept aside until the new one is in place, then removed. A crash between the two
    renames leaves the old target aside (`.<name>.old-<pid>`), never a half-written one at `target`."""
    staging, target = Path(staging), Path(target)
    fsync_tree(staging)
    retired = None
    if target.exists():
        retired = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(target, retired)
    os.replace(staging, target)
    fsync_directory(target.parent)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
